//! Route handlers, one file per resource.

pub mod channels;
pub mod fee_bump;
pub mod keys;
pub mod sign;
pub mod soroban;
