// Package hostile is the hostile-input suite: its tests speak raw HTTP/1.1
// bytes and raw HTTP/2 frames to real sidemesh listeners (the outbound
// listener in plain text, the inbound one behind mutual TLS) and assert,
// for each attack class, what the attacker got back and what the app
// behind the sidecar received. The package holds no code of its own.
package hostile
