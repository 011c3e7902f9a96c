from experiments.images.main import main

main()
