"""Cluster manager: starts and stops Ray and the gateway for one state dir."""
