from experiments.memorization.main import main

main()
