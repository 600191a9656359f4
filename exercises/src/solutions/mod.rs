//! Reference solutions, one per exercise, in the stub's shape. Spoilers:
//! try the exercise first. Each retells, or calls, a level's own code, and
//! CI checks that each one passes its exercise's check.

pub mod ex01;
pub mod ex02;
pub mod ex03;
pub mod ex04;
pub mod ex05;
pub mod ex06;
pub mod ex07;
pub mod ex08;
pub mod ex09;
pub mod ex10;
