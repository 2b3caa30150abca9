//! The reason catalogue (errors.proto) against the code and these tests.
