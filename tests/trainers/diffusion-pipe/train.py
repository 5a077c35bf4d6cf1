# Stand-in checkout of diffusion-pipe (tests only): the stand-in `deepspeed` on PATH does the work.
