//! Bytes a client controls, fuzzed through the real service: no panic, no INTERNAL.
