//! Level 2 of ticket-rush: locks in PostgreSQL (optimistic, pessimistic, NOWAIT, atomic update, serializable) that stay correct across servers.
//!
//! (Being written.)
