//! The pristine stubs, compiled so that CI can check that each one fails
//! its exercise's check, whatever a learner did to their own copy.
//! `load exercise reset N` copies `exercises/stubs/NN-name.rs` back over
//! `exercises/NN-name/sell.rs`.

#[path = "../stubs/01-one-lock.rs"]
pub mod ex01;
#[path = "../stubs/02-lock-across-commit.rs"]
pub mod ex02;
#[path = "../stubs/03-row-lock.rs"]
pub mod ex03;
#[path = "../stubs/04-optimistic-retry.rs"]
pub mod ex04;
#[path = "../stubs/05-atomic-update.rs"]
pub mod ex05;
#[path = "../stubs/06-owner-release.rs"]
pub mod ex06;
#[path = "../stubs/07-fencing.rs"]
pub mod ex07;
#[path = "../stubs/08-idempotency-key.rs"]
pub mod ex08;
#[path = "../stubs/09-lua-purchase.rs"]
pub mod ex09;
#[path = "../stubs/10-lock-order.rs"]
pub mod ex10;
