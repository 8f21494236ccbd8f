"""The drift service's core: statistics, windows and alarm rules that compare recent traffic with a frozen reference, per model variant.

The core reads no store and publishes nothing. A runner feeds `DriftWindows`
(or builds `WindowPair`s from SQL results itself), passes the pairs to
`Detector.evaluate`, and publishes the `Alert`s it returns.
"""
