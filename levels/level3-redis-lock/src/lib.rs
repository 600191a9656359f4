//! Level 3 (being written).

pub mod lock;
