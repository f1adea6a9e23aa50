//! One module per verb.

pub mod bench;
