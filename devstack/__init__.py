"""`keyrelay dev`: a whole keyrelay (two shared nodes, a dedicated node, the gateway, the relay) on
one machine on SoftHSM, started in the background from one state directory (`devstack.stack`)."""
