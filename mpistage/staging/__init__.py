"""The one collective call, ``stage()``: its options, pre-flight, plan, the copies' engines, the closing exchange and the report."""
