// VFIO module: see Package.swift for the layering.
