//! Level 3 of ticket-rush: a Redisson-style Redis lock written from scratch, with pub/sub wake-up, watchdog renewal and fencing tokens.
//!
//! (Being written.)
