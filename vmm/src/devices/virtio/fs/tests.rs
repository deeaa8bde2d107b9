//! Device tests (filled in below).
