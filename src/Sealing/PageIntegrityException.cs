namespace SEmigrate.Sealing;

/// <summary>A page came back from a host other than it was sent: altered, swapped, replayed, truncated
/// or re-labelled. A security event: never retried into wrong data.</summary>
public sealed class PageIntegrityException(Guid vm, ulong pfn, string host, string reason)
    : Exception($"page 0x{pfn:x} of VM {vm} from host {host} failed its check: {reason}")
{
    public Guid Vm => vm;

    public ulong Pfn => pfn;

    public string Host => host;

    public string Reason => reason;
}
