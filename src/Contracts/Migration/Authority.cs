namespace SEmigrate.Contracts.Migration;

/// <summary>A host's public key as the operator enrolled it: the key a main host's data key is wrapped
/// for. A request pins the keys of its destinations, so no step, reply or database can swap them.</summary>
public sealed record PinnedHost(string Host, byte[] HostKey);

/// <summary>The operator's standing order to drain <paramref name="Host"/> until <paramref name="NotAfter"/>:
/// the drain's migrations (which the orchestrator plans, and nobody signs one by one) may move its guests
/// to the other hosts of <paramref name="Hosts"/> (keys pinned; the drained host's own is there too), in <paramref name="Mode"/> with
/// <paramref name="PlainProcesses"/>, with one of <paramref name="MainHosts"/> as the main host (the hosts the
/// operator trusts with a guest's data key; the others hold sealed pages only), one migration of a guest at
/// a time. <paramref name="Signature"/>: the operator's, over all the rest.</summary>
public sealed record DrainOrder(
    string Host,
    MigrationMode Mode,
    IReadOnlyList<string> PlainProcesses,
    IReadOnlyList<PinnedHost> Hosts,
    DateTimeOffset NotAfter,
    byte[] Signature,
    IReadOnlyList<string>? MainHosts = null);
