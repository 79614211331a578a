"""The protocol layer shared by the server, the router and the Ray Serve cluster: errors in
each client's protocol, stream framing, API keys and the gate before every route, protocol
detection, and the prefix-affinity policy. Nothing here knows about the engine."""
