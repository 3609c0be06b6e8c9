//! The pure lifecycle state machine (placeholder while moving files).
