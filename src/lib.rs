//! kube-balancer: Apache's mod_proxy_balancer as a Kubernetes-native load balancer.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod balancer;
pub mod cli;
pub mod clock;
pub mod controller;
pub mod demo;
pub mod discovery;
pub mod gateway;
pub mod health;
pub mod plane;
pub mod plugin;
pub mod proxy;
pub mod standalone;
pub mod status;
pub mod telemetry;
pub mod tls;
