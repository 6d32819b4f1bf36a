"""Gateway: the policy enforcement point in front of Ray's dashboard and Jobs API."""
