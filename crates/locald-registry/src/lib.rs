//! Container images from OCI registries: references as Docker writes them, credentials where
//! users keep them, pulls over the distribution protocol (`oci-client`) into a per-user
//! content-addressed store shared by every project, and the per-project pins
//! (`.locald/images.json`) that keep a later `up` on the same image.

pub mod auth;
pub mod error;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod store;
pub mod tls;

pub use error::PullError;
pub use pull::{OnProgress, PullOptions, pull};
pub use reference::ImageRef;
pub use store::{ImageRecord, Pinned, ProjectImages, Store};
