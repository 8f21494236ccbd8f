"""The safety service: screens each accepted prompt with the policy's input scanners."""
