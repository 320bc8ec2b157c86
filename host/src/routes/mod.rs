//! Route handlers, one file per resource.

pub mod channels;
pub mod keys;
pub mod sign;
