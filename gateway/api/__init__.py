"""REST endpoints of the gateway, one router per resource."""
