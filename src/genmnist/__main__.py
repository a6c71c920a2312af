from genmnist.cli import main

main()
