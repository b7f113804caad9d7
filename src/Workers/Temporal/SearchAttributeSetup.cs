using Temporalio.Api.Enums.V1;
using Temporalio.Api.OperatorService.V1;
using Temporalio.Client;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Temporal;

/// <summary>The migration workflow's search attributes on a namespace: which are missing, and adding
/// them (Temporal's OperatorService). Without them every workflow task of a migration fails.</summary>
public static class SearchAttributeSetup
{
    /// <summary>What each attribute of ours is on the namespace: registered as Keyword, missing, or of another type.</summary>
    public static async Task<IReadOnlyList<(string Name, IndexedValueType? Has)>> CheckAsync(ITemporalClient client, CancellationToken ct)
    {
        var listed = await client.Connection.OperatorService.ListSearchAttributesAsync(
            new ListSearchAttributesRequest { Namespace = client.Options.Namespace }, new RpcOptions { CancellationToken = ct });
        return [.. MigrationWorkflow.SearchAttributes.Select(key =>
            (key.Name, listed.CustomAttributes.TryGetValue(key.Name, out var type) ? type : (IndexedValueType?)null))];
    }

    /// <summary>Registers the missing ones (idempotent: present ones are left alone); returns their names.
    /// One registered with another type is an error the operator must resolve.</summary>
    public static async Task<IReadOnlyList<string>> AddMissingAsync(ITemporalClient client, CancellationToken ct)
    {
        var found = await CheckAsync(client, ct);
        if (found.FirstOrDefault(f => f.Has is { } t && t != IndexedValueType.Keyword) is { Name: not null } wrong)
        {
            throw new InvalidOperationException($"search attribute {wrong.Name} is registered on namespace {client.Options.Namespace} as {wrong.Has}, not Keyword: remove it first");
        }
        var missing = found.Where(f => f.Has is null).Select(f => f.Name).ToList();
        if (missing.Count == 0)
        {
            return [];
        }
        var request = new AddSearchAttributesRequest { Namespace = client.Options.Namespace };
        foreach (var name in missing)
        {
            request.SearchAttributes[name] = IndexedValueType.Keyword;
        }
        try
        {
            await client.Connection.OperatorService.AddSearchAttributesAsync(request, new RpcOptions { CancellationToken = ct });
        }
        catch (Temporalio.Exceptions.RpcException e) when (e.Code == Temporalio.Exceptions.RpcException.StatusCode.AlreadyExists)
        {
            // Another setup added them meanwhile.
        }
        return missing;
    }
}
