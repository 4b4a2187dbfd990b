from mixup_cli.cli import main

# Guarded: worker processes started with the "spawn" method (the Dask engine's
# local cluster) import this module again and must not run the command.
if __name__ == "__main__":
    main(prog_name="mixup")
