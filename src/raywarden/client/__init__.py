"""Client side: profiles (who I am, which gateway, which CA) and the HTTPS client for the gateway."""
