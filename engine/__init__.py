"""fedray's runtime: population, clients, workers, server and the simulation loop."""
