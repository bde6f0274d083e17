fn main() -> std::process::ExitCode {
    xen_block_hotplug::cli::main()
}
