//! ota-operator: a self-hosted, Kubernetes-native live-update platform for Capacitor apps.
//!
//! - [`analysis`] takes the measurements of rollout analysis metrics (Prometheus, web);
//! - [`api`] holds the custom resources (`ota.dev/v1alpha1`) and every contract string;
//! - [`crdgen`] renders the CRDs as YAML, one document per kind;
//! - [`telemetry`] sets up logging.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod analysis;
pub mod api;
pub mod cli;
pub mod clock;
pub mod controller;
pub mod core;
pub mod crdgen;
pub mod crypto;
pub mod devices;
pub mod duration;
pub mod error_chain;
pub mod layout;
pub mod protocol;
pub mod rollout_driver;
pub mod server;
pub mod standalone;
pub mod storage;
pub mod sync;
pub mod sync_driver;
pub mod telemetry;
pub mod watch;
