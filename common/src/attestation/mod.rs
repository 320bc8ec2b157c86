//! Parsing of what attested KMS calls exchange (docs/design.md §4): Nitro attestation
//! documents (COSE_Sign1 with a certificate chain), and the CMS envelope KMS answers
//! with, over a BER reader that accepts both the indefinite lengths real KMS emits and
//! DER.

pub mod ber;
pub mod cms;
pub mod document;
