//! Settlement windows: the open window, close, reports (operator.proto, common.proto).
