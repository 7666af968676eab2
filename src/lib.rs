//! staticpod-puller: keeps an edge node's static pods in the state its operators declared.

pub mod sim;
