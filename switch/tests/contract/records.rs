//! Stored records that fail to decode: an error to the caller and a failed switch, never a
//! default.
