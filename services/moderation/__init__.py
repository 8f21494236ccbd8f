"""The moderation service: scans streamed output, releases it to the release log and reports the outcome."""
