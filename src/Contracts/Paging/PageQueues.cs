namespace SEmigrate.Contracts.Paging;

/// <summary>The one naming scheme for page traffic: a control queue per memory server (start a VM,
/// usage), and per VM at that server a bulk queue (store, page-out, release) and a fetch queue
/// (page-in, kept apart so page faults never wait behind bulk batches). Requests go through the
/// default exchange, straight to the queue they name: nothing can be bound to it, so no broker account
/// can tap another host's page traffic (only the broker's own tracer sees it). A host's broker user may
/// read only its own queues (deploy/services.sh host-user).</summary>
public static class PageQueues
{
    public static string Control(string host) => $"semigrate.pages.{host}";

    /// <summary>A VM's bulk queue; a VM started with a capability has queues named with its
    /// <paramref name="token"/> (see <see cref="Token"/>): only who holds the capability can address them.</summary>
    public static string Bulk(string host, Guid vm, string? token = null) => $"semigrate.pages.{host}.{vm:N}{(token is null ? "" : "." + token)}.bulk";

    public static string Fetch(string host, Guid vm, string? token = null) => $"semigrate.pages.{host}.{vm:N}{(token is null ? "" : "." + token)}.fetch";

    /// <summary>The part of a VM's queue names that its capability decides: from the capability's SHA-256
    /// (what the memory server keeps), 128 bits, so nobody without the capability can guess the names.</summary>
    public static string Token(ReadOnlySpan<byte> capabilityHash) =>
        Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData([.. "semigrate queue token v1|"u8, .. capabilityHash]).AsSpan(0, 16));
}
