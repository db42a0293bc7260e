//! TLS for the proxy: a local CA that can only ever vouch for local names, and leaf certificates
//! issued per SNI on demand.

pub mod ca;
