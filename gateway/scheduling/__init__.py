"""The leader's scheduling: the pure planner, the loop that places and watches hosts, the lease."""
