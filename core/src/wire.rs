//! Wire and disk encodings of the core's boundary types. (Being written.)
