"""PKI: two certificate authorities and X.509-SVID leaf certificates carrying SPIFFE IDs."""
