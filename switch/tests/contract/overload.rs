//! Overload: admission at the edge, refusals with a reason and a retry-after trailer, no
//! connection torn down, fairness between PSPs.
