namespace SEmigrate.MemoryServer;

/// <summary>A sub-host's memory server. Deliberately no key of any kind: in semigrate mode a sub-host
/// stores and returns ciphertext it cannot open. (The allenc baseline makes its own keys at run time.)</summary>
public sealed record MemoryServerOptions
{
    public const string Section = "MemoryServer";

    /// <summary>This sub-host's name: its queues are named after it.</summary>
    public string Host { get; init; } = "";

    /// <summary>How many pages it may hold, over all VMs (default 1 GiB of pages).</summary>
    public long CapacityPages { get; init; } = 1 << 18;

    /// <summary>When set, pages are kept in files here instead of in memory.</summary>
    public string? StoreFolder { get; init; }

    /// <summary>Most VMs served at once: each has two queues and two channels, and a flood of StartVm
    /// requests must not open channels without end (RabbitMQ allows 2047 per connection).</summary>
    public int MaxVms { get; init; } = 256;

    /// <summary>Whether a VM may be started without a capability (its queues then have plain names anyone
    /// can reach): for tests of the page path alone, never on a host, where every VM belongs to the
    /// holder of its migration's capability and a capability-less StartVm would only reserve room.</summary>
    public bool AllowVmsWithoutCapability { get; init; }

    /// <summary>Unacknowledged deliveries per queue.</summary>
    public ushort Prefetch { get; init; } = 64;
}
