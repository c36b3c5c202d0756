// IOAT module: see Package.swift for the layering.
