//! The ringkv node: drives `ringkv-core` over real I/O. Not built yet (issue 3).
