using SEmigrate.Contracts.Paging;

namespace SEmigrate.MemoryServer;

/// <summary>A page-protocol request that failed with a reason: an error reply from the memory server,
/// no reply in time, or no queue to deliver to (host down, VM not started).</summary>
public sealed class PageProtocolException(PageError code, string host, string message)
    : Exception($"{host}: {code}: {message}")
{
    public PageError Code => code;

    public string Host => host;
}
