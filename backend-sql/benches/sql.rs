//! Benchmark of the SQL backend (being written).

fn main() {}
