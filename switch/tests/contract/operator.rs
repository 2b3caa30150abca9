//! OperatorService: participants, funding, caps, suspension, listings (operator.proto).
