//! Tests of the identity module; split by concern under `tests/`.

mod agents_file;
mod basic;
mod cache;
mod certificates;
mod fuzz;
mod jwt;
mod sources;
mod support;
