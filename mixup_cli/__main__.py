from mixup_cli.cli import main

main(prog_name="mixup")
